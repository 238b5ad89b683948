"""The query pipeline: stages that each answer a query or pass it on (see docs/pipeline.md)."""
