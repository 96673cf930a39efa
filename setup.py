"""resdepth: residual diffusion for monocular depth from event cameras, trained at scale."""
from setuptools import find_packages, setup

setup(
    name="resdepth",
    version="0.1.0",
    description="Distributed training of residual-diffusion depth estimators for event cameras",
    python_requires=">=3.10",
    # Only resdepth is installed: launch/ and shards_tools/ hold shell scripts, not modules that
    # could shadow other projects' top-level `launch` or `shards_tools`.
    packages=find_packages(include=["resdepth", "resdepth.*"]),
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "webdataset==1.0.2",
        "submitit>=1.5.4",
        "deepspeed>=0.19",
        "tensorboard>=2.16",
        "rich>=13",
        "pyyaml>=6",
        "safetensors>=0.4",
        "h5py>=3.10",
        "hdf5plugin>=4.0",
        "pillow>=10",
        "matplotlib>=3.8",
        "imageio>=2.34",
        "imageio-ffmpeg>=0.5",
        "faery>=0.7",
    ],
    # wandb: optional Weights & Biases logging (logging.wandb=true); the tests exercise it offline
    extras_require={"wandb": ["wandb>=0.19"],
                    "test": ["pytest>=8", "pytest-timeout>=2.3", "wandb>=0.19"]},
    entry_points={
        "console_scripts": [
            "resdepth-shards=resdepth.data.cli:main",
            "resdepth-train=resdepth.train.__main__:cli",
            "resdepth-eval=resdepth.eval.__main__:cli",
            "resdepth-predict=resdepth.predict.__main__:cli",
            "resdepth-launch=resdepth.launch.__main__:cli",
        ]
    },
)
