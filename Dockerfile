# rllr release binaries (rllr-server, rllr, rllr-train) in a slim, non-root CPU runtime image whose
# default command is the inference server. The CUDA image is Dockerfile.cuda.
#
#   docker build -t rllr .
#   docker run --rm -p 50051:50051 -p 8080:8080 -p 9000:9000 -v $PWD/models:/models:ro rllr
#
# Models are not baked in: mount a directory laid out like the repo's models/ (the embedded default
# reads /models/quickstart/sst2/* and /models/smollm2-135m-instruct), or fill a volume in an init
# step (docs/operations.md, "Models"). Both ports listen on all interfaces inside the container.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rllr-trainer -p rllr-server -p rllr-client \
 && mkdir -p /out && cp target/release/rllr-train target/release/rllr-server target/release/rllr /out/ \
 && strip --strip-debug /out/*

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/rllr rllr
COPY --from=build /out/ /usr/local/bin/
ENV RLLR_SERVER_LISTEN=0.0.0.0:50051 \
    RLLR_SERVER_METRICS_LISTEN=0.0.0.0:9000 \
    RLLR_SERVER_HTTP_LISTEN=0.0.0.0:8080 \
    RLLR_SERVER_MODEL_ROOT=/models \
    RLLR_CLIENT_ENDPOINTS=http://127.0.0.1:50051
EXPOSE 50051 8080 9000
USER 10001:10001
WORKDIR /home/rllr
# `rllr health` exits 0 only when grpc.health.v1 answers SERVING for the overall server ("").
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["rllr", "health"]
ENTRYPOINT ["rllr-server"]
