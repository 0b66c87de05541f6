"""Local stand-ins for demos and tests (the `local` extra): the Klaviyo sandbox, a real Kafka
broker and a real Schema Registry (Apicurio) from Maven Central, and generated traffic. Nothing
here runs in a production consumer."""
