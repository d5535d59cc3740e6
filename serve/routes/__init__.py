"""One FastAPI router per domain: cases, detect, stats, admin (keys), outbox (webhook), health (+ metrics), ui."""
