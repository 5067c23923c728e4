from setuptools import find_packages, setup

setup(
    name="dphubert",
    version="0.1.0",
    description="DPHuBERT recipes: joint distillation and structured pruning of self-supervised speech models",
    packages=find_packages(include=["dphubert", "dphubert.*"]),
    package_data={"dphubert.superb": ["configs/*.yaml"], "dphubert.distill": ["conf/*.yaml"]},
    python_requires=">=3.10",
    install_requires=["torch", "torchaudio", "numpy", "soundfile", "kaldiio", "PyYAML", "tqdm"],
)
