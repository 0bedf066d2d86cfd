"""Project-wide pytest configuration.

- every pack's YAML test cases are collected as test items (cds.testing.pytest_plugin);
- a real FHIR R4 server on loopback is available as the ``fhir_server`` fixture;
- a real uvicorn-served CDS service is available from tests.support.live.
"""

pytest_plugins = ["cds.testing.pytest_plugin", "tests.support.fhir_server"]
