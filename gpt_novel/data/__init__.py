"""The data pipeline, one stage per module, in the order data flows:
ingest → clean → chapters → segment → vocab → shards. A module imports only from the stages before it."""
