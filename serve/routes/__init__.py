"""One FastAPI router per domain: cases, detect, stats, admin (keys), health (+ metrics), ui."""
