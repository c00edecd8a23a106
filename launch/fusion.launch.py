"""Start the tdfusion_ros fusion node.

    ros2 launch tdfusion_ros fusion.launch.py [config:=FILE] [bundle:=DIR] [backend:=auto]
        [namespace:=NS] [use_sim_time:=true] [thermal_topic:=/thermal/image_raw]
        [rgb_topic:=/rgb/image_raw] [fused_image_topic:=...] [detections_topic:=...]

Every default, parameter override, remap and environment variable comes from
``tdfusion_ros.ros.node_params``; the CI test starts the node process from the same spec, so
what is tested is what this file launches. ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` is set
for the node process: image topics of this size need Fast DDS's large-data transport (set it
for the camera drivers too; other RMWs ignore it).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from tdfusion_ros.ros import node_params


def _node(context, *args, **kwargs):
    """Resolve the arguments, then build the node exactly as node_params describes it."""
    values = {arg.name: LaunchConfiguration(arg.name).perform(context)
              for arg in node_params.launch_arguments()}
    spec = node_params.launch_spec(values)
    return [Node(
        package=node_params.PACKAGE,
        executable=node_params.EXECUTABLE,
        name=spec.name,
        namespace=spec.namespace,
        parameters=spec.parameters,
        remappings=list(spec.remappings),
        additional_env=spec.env,
        ros_arguments=["--log-level", spec.log_level],  # launch_ros adds the one --ros-args
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    arguments = [DeclareLaunchArgument(arg.name, default_value=arg.default,
                                       description=arg.description)
                 for arg in node_params.launch_arguments()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
