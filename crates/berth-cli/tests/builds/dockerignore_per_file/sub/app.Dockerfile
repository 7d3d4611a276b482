# A Dockerfile's own ignore file (<Dockerfile>.dockerignore beside it) is used instead
# of the context's .dockerignore.
ARG BASE
FROM $BASE
COPY . /ctx/
CMD ["sh", "-c", "busybox find /ctx | busybox sort"]
