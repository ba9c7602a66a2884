# Multi-stage build: compile in the Rust image, run in a slim Debian as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY migrations migrations
COPY templates templates
COPY benches benches
COPY examples examples
COPY tests tests
RUN cargo build --release --locked --bin mailpush

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/mailpush --create-home --uid 10001 mailpush \
 && install -d -o mailpush -g mailpush -m 0750 /var/lib/mailpush/data /run/mailpush
COPY --from=build /src/target/release/mailpush /usr/local/bin/mailpush
COPY mailpush.example.toml /etc/mailpush/mailpush.example.toml
USER mailpush
WORKDIR /var/lib/mailpush
# The data dir holds the generated token secret; the run dir holds the Cyrus socket, which
# the Cyrus container (or host) must share.
ENV MAILPUSH_HTTP__LISTEN=0.0.0.0:8080 \
    MAILPUSH_STORAGE__DATA_DIR=/var/lib/mailpush/data \
    MAILPUSH_INGEST__CYRUS_SOCKET=/run/mailpush/notify.sock
VOLUME ["/var/lib/mailpush/data", "/run/mailpush"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/usr/local/bin/mailpush", "health"]
ENTRYPOINT ["/usr/local/bin/mailpush"]
CMD ["serve"]
