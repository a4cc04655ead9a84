# A minimal JupyterHub single-user image built without any registry: the base
# is a debootstrap'ed Debian imported by scripts/setup-host.
ARG BASE
FROM ${BASE}
ARG HUB_MAJOR
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-venv ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY host-ca.crt /tmp/host-ca.crt
RUN python3 -m venv /opt/venv \
 && PIP_CERT=/tmp/host-ca.crt /opt/venv/bin/pip install -q --no-cache-dir \
      "jupyterhub==${HUB_MAJOR}.*" jupyterlab \
 && rm /tmp/host-ca.crt
RUN useradd --create-home --uid 1000 --shell /bin/bash jovyan
ENV PATH=/opt/venv/bin:$PATH \
    SHELL=/bin/bash
USER jovyan
WORKDIR /home/jovyan
EXPOSE 8888
ENTRYPOINT ["tini", "--"]
CMD ["jupyterhub-singleuser"]
