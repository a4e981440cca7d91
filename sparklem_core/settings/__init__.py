"""Configuration: the processor's config file, declared settings and the one YAML loader,
Kafka properties checked by librdkafka, secret masking, and log setup for every command."""
