# syntax=docker/dockerfile:1
# A krt-runner node image. `krt-runner run` is PID 1 (exec-form ENTRYPOINT), so SIGTERM reaches it
# and the node drains before the container stops. Settings come from KRT_* variables; the node's
# files (handler, generated _pb2 modules, models) go in /krt: mounted, or copied in a derived image.
# The same image serves the KRT's gRPC entrypoint on port 9000 (also PID 1, also draining on SIGTERM):
#   docker run --entrypoint=krt-runner -e KRT_NATS_SERVER=... -p 9000:9000 IMAGE entrypoint /krt
#
#   docker build -t krt-runner:dev .
#   docker build -t krt-runner:dev-examples --build-arg EXTRAS=speed,entrypoint,examples .   # + scikit-learn
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=speed,entrypoint
WORKDIR /src
COPY pyproject.toml README.md ./
COPY krt_runner ./krt_runner
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=speed,entrypoint
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KRT_BASE_PATH=/krt \
    KRT_LOG_FORMAT=json \
    KRT_HEALTH_FILE=/tmp/krt-runner.health
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "krt-runner[${EXTRAS}]" \
    && rm -rf /wheels \
    && useradd --uid 10001 --create-home --home-dir /home/krt krt \
    && mkdir /krt && chown krt:krt /krt
# Not root; its home is the working directory, so a measurements.lp fallback has somewhere to go.
USER 10001:10001
WORKDIR /home/krt
# Fresh while connected and subscribed; Kubernetes: an exec probe running the same command.
# The gRPC entrypoint's port (krt-runner entrypoint); nodes listen on none.
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["krt-runner", "health"]
ENTRYPOINT ["krt-runner", "run"]
