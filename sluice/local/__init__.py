"""The local single-node stack: a real Apache Kafka broker fetched from Maven Central and
run on loopback, started and stopped by pid. No Docker needed."""
