"""I/O: JetStream, Elasticsearch and MongoDB. The only package that talks to servers."""
