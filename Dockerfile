# ssvp serve as a container: a multi-stage build, a small Debian runtime, a non-root user.
#
#   docker build -t registry.example.com/ssvp:0.1.0 .
#   docker run --rm -p 8080:8080 -v /srv/ssvp/line3:/mnt/models:ro \
#     registry.example.com/ssvp:0.1.0 \
#     --checkpoint /mnt/models/run --calibration /mnt/models/calib.json --class-name "metal plate"
#
# Model files are mounted (KServe's storageUri mounts them at /mnt/models), or the backbones are
# fetched from the Hugging Face hub at start into HF_HOME (mount a volume there to keep them
# across restarts). deploy/serve/ has a KServe InferenceService; docs/serve.md explains the flags.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# The release profile strips the binary (Cargo.toml).
RUN cargo build --release --locked -p ssvp-cli

FROM debian:bookworm-slim
# CA certificates for downloads from the Hugging Face hub; nothing else is needed at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/ssvp ssvp
COPY --from=build /src/target/release/ssvp /usr/local/bin/ssvp
USER 10001
ENV HF_HOME=/home/ssvp/.cache/huggingface \
    PORT=8080
EXPOSE 8080
# The server drains on SIGTERM (readiness 503, then finishes in-flight requests) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ssvp", "serve", "--host", "0.0.0.0", "--log-format", "json"]
