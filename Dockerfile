# syntax=docker/dockerfile:1
# berth's images, built from source with Docker (BuildKit) or buildah:
#
#   docker build --target berth-registry -t berth.dev/berth-registry:0.1.0 .
#   docker build --target berth-operator -t berth.dev/berth-operator:0.1.0 .
#
# A Rust builder stage compiles static musl binaries; the final images are
# FROM scratch, run as the nonroot user 65532 and hold one binary each.
# Where no base image can be pulled (CI here), e2e/images/build compiles on
# the host and uses e2e/images/Dockerfile.prebuilt, whose final stages match
# the ones below.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
ENV CC_x86_64_unknown_linux_musl=musl-gcc
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bins \
 && mkdir -p /out/bin \
 && for b in berth-registry berth-operator; do \
      if [ -f target/x86_64-unknown-linux-musl/release/$b ]; then \
        cp target/x86_64-unknown-linux-musl/release/$b /out/bin/; \
      fi; \
    done
# What every image has besides its binary: the nonroot user, /tmp, /var/lib,
# and the public CAs (the registry reaches S3 endpoints over https).
RUN mkdir -p /out/rootfs/etc/ssl/certs /out/rootfs/var/lib /out/rootfs/tmp /out/empty \
 && cp /etc/ssl/certs/ca-certificates.crt /out/rootfs/etc/ssl/certs/ \
 && chmod 1777 /out/rootfs/tmp \
 && printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >/out/rootfs/etc/passwd \
 && printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >/out/rootfs/etc/group

FROM scratch AS base
COPY --from=build /out/rootfs/ /
USER 65532:65532

FROM base AS berth-registry
ARG VERSION=dev
LABEL org.opencontainers.image.title="berth-registry" \
      org.opencontainers.image.description="OCI Distribution Spec v1.1 registry deployed by berth" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/berth-dev/berth"
COPY --from=build /out/bin/berth-registry /usr/local/bin/berth-registry
COPY --from=build --chown=65532:65532 /out/empty/ /var/lib/registry/
ENV BERTH_LISTEN=0.0.0.0:5000 BERTH_DATA=/var/lib/registry
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/berth-registry"]
CMD ["serve"]

FROM base AS berth-operator
ARG VERSION=dev
LABEL org.opencontainers.image.title="berth-operator" \
      org.opencontainers.image.description="Kubernetes operator that deploys private container registries" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/berth-dev/berth"
COPY --from=build /out/bin/berth-operator /usr/local/bin/berth-operator
ENTRYPOINT ["/usr/local/bin/berth-operator"]
