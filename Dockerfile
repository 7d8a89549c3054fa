# rllr release binaries (rllr-train, rllr-server, rllr, rllr-bench) in a slim runtime image.
# Build: docker build -t rllr .      Run: docker run --rm -v $PWD/models:/models rllr rllr-train --help
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
USER rllr
WORKDIR /home/rllr
ENTRYPOINT []
CMD ["rllr-train", "--help"]
