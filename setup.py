from glob import glob

from setuptools import find_packages, setup

package_name = "tdfusion_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, f"{package_name}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
        (f"share/{package_name}/models", glob("models/*.*")),
        (f"share/{package_name}/models/default", glob("models/default/*")),
    ],
    install_requires=["setuptools"],
    # `colcon test` runs pytest only for packages that declare it as a test dependency (the
    # ament_python convention); without it colcon falls back to `python -m unittest`.
    extras_require={"test": ["pytest"]},
    zip_safe=True,
    maintainer="tdfusion_ros maintainers",
    maintainer_email="maintainers@users.noreply.r-seed-b2a4bc32.example",
    description="Task-driven infrared/visible image fusion (TDFusion) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "fuse = tdfusion_ros.fuse:main",
            "fusion_node = tdfusion_ros.node:main",
            "replay_eval = tdfusion_ros.replay:main",
            "bag_builder = tdfusion_ros.bag_builder:main",
        ],
    },
)
