"""launch_testing: ``fusion.launch.py`` starts a node that fuses, reports and exits cleanly.

For a real ROS 2 install (``colcon test``); it skips only where launch_testing cannot be
imported (this CI: launch, launch_ros and launch_testing are not on PyPI, so test_node.py
starts the node with the same ``node_params.launch_spec`` instead). The node runs with the
package's default bundle on ONNX Runtime; a few small pairs are published at 2 Hz, so a slow
CPU still fuses some of them.
"""

from __future__ import annotations

import os
import threading
import time
import unittest
from pathlib import Path

import pytest

pytest.importorskip("launch_testing")
pytest.importorskip("launch_ros")

import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

import launch  # noqa: E402
from tdfusion_ros.ros import node_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120.0


def _launch_file() -> Path:
    local = REPO / "launch" / "fusion.launch.py"
    if local.is_file():
        return local
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(node_params.PACKAGE)) / "launch" / "fusion.launch.py"


@pytest.mark.launch_test
def generate_test_description() -> launch.LaunchDescription:
    os.environ.update(node_params.ENVIRONMENT)  # this test process publishes images too
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(_launch_file())),
        launch_arguments={"backend": "onnxruntime", "namespace": ""}.items())
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestFusionLaunch(unittest.TestCase):
    """While the launched node runs: publish pairs, expect fused images and diagnostics."""

    @classmethod
    def setUpClass(cls) -> None:
        import rclpy

        rclpy.init()
        cls.node = rclpy.create_node("fusion_launch_test")

    @classmethod
    def tearDownClass(cls) -> None:
        import rclpy

        cls.node.destroy_node()
        rclpy.shutdown()

    def test_fuses_and_reports(self, proc_output) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from tdfusion_ros.ros.ros_image import array_to_image, stamp_to_ns

        node = self.node
        fused: list[int] = []
        diagnostics: list[DiagnosticArray] = []
        node.create_subscription(Image, "/fused/image",
                                 lambda m: fused.append(stamp_to_ns(m.header.stamp)), 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        thermal = node.create_publisher(Image, "/thermal/image_raw", 10)
        rgb = node.create_publisher(Image, "/rgb/image_raw", 10)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        deadline = time.monotonic() + TIMEOUT
        while rgb.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertGreaterEqual(rgb.get_subscription_count(), 1, "the node did not subscribe")
        rng = np.random.default_rng(0)
        sent = []
        while not fused and time.monotonic() < deadline:
            stamp = node.get_clock().now().nanoseconds
            ir = rng.integers(0, 65535, (96, 128), dtype=np.uint16)
            vi = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
            thermal.publish(array_to_image(ir, "mono16", stamp, "thermal"))
            rgb.publish(array_to_image(vi, "bgr8", stamp, "rgb"))
            sent.append(stamp)
            time.sleep(0.5)
        executor.shutdown()
        self.assertTrue(fused, "no fused image within the timeout")
        self.assertIn(fused[0], sent)
        self.assertTrue(any("fusion_node" in s.name for d in diagnostics for s in d.status))


@launch_testing.post_shutdown_test()
class TestFusionLaunchShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
