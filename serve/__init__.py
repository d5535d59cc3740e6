"""The FastAPI inference and case-queue service, and the review UI."""
