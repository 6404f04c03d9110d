"""headseg: head segmentation and head-attire classification on torchvision's Mask R-CNN."""

from setuptools import find_packages, setup

setup(
    name="headseg",
    version="0.1.0",
    description="Find every head in a photo, segment it, and tell what it wears.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["headseg", "headseg.*"]),
    package_data={"headseg": ["assets/*.pt", "assets/*.json"]},
    install_requires=[
        # Mask R-CNN, MobileNetV2 and transforms.v2 (box/mask-aware augmentation) as used here.
        "torch>=2.1",
        "torchvision>=0.16",
        "pycocotools>=2.0.7",
        "opencv-python-headless>=4.8,<5",  # 5.x moved the Haar cascades to contrib
        "numpy>=1.24",
        "Pillow>=9.5",
        "PyYAML>=6.0",
        "tqdm>=4.64",
        "matplotlib>=3.7",
        # Optimal track/label matching (headseg.track_eval) and the bootstrap confidence
        # intervals of the evaluation tools (headseg.evaluation; `rng=` from 1.15).
        "scipy>=1.15",
        # Video: ByteTrack links heads across frames (headseg.tracking); Roboflow's `trackers`
        # is where supervision's sv.ByteTrack moved. It declares opencv-python, the GUI build
        # of the same cv2 package as the headless one above: `make venv` keeps the headless one.
        "trackers>=2.6,<3",
        # Tracking metrics (MOTA, IDF1) for tools/eval_video.py: MOTChallenge's TrackEval.
        # motmetrics 1.4 calls np.asfarray, gone in NumPy 2.
        "trackeval>=1.3",
    ],
    entry_points={"console_scripts": ["headseg-weights=headseg.weights:main"]},
    extras_require={
        "dev": ["pytest>=7.4", "hypothesis>=6.80", "onnx>=1.14", "onnxscript>=0.5", "onnxruntime>=1.18"],
        # Archive-scale batch inference (headseg.ray_inference, tools/predict_ray.py). The floor
        # is the release it was tested with; older 2.x releases are untested.
        "ray": ["ray[data]>=2.60"],
    },
)
