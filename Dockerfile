# pairdb: one image for every pairdb process (storage node, coordinator, worker, CLI).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
# pairdb/ links coordinator/, proto/, activities/ and workflows/ in as pairdb.* packages.
COPY pairdb ./pairdb
COPY coordinator ./coordinator
COPY activities ./activities
COPY workflows ./workflows
COPY proto ./proto
RUN pip install --no-cache-dir .

# Storage nodes keep their data here; mount a volume on it.
VOLUME ["/data"]
ENTRYPOINT ["pairdb"]
CMD ["--help"]
