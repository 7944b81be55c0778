# One image for web, workers and beat; the GPU worker runs the same image with the NVIDIA runtime.
# torch comes from PyPI by default (on Linux x86_64 that is the CUDA build, which also runs on
# CPUs); build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for a smaller
# CPU-only image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    STATIC_ROOT=/app/staticfiles HF_HOME=/app/var/cache/huggingface
WORKDIR /app
ARG TORCH_INDEX_URL=""
COPY requirements.txt .
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "torch==$(sed -n 's/^torch==//p' requirements.txt)"; \
    fi \
    && pip install -r requirements.txt
COPY . .
# Static files are collected into the image (outside var/, so no volume hides them) with the
# manifest whitenoise serves when DEBUG is off.
RUN DEBUG=1 STATIC_MANIFEST=1 python manage.py collectstatic --noinput -v 0
# The folders the compose volumes mount are created here, owned by the app user: a fresh named
# volume takes their owner.
RUN useradd --create-home app \
    && mkdir -p /app/var/media /app/var/exports /app/var/cache /app/var/beat \
    && chown -R app /app/var
USER app
EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--access-logfile", "-"]
