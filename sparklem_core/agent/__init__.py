"""The agent: collect through plugins, seal, spool on disk, send to Kafka. No database stack."""
