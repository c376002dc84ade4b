# privnet worker / API image: `privnet worker`, `privnet api`, `privnet bootstrap`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY settings.py worker.py ./
COPY workflows ./workflows
COPY activities ./activities
COPY starter ./starter
COPY sandbox ./sandbox
COPY migrations ./migrations
RUN pip install . && useradd --uid 10001 --no-create-home privnet

USER 10001
EXPOSE 8080
ENTRYPOINT ["privnet"]
CMD ["worker"]
