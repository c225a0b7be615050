"""Whole meshes as local processes, isolated from any gateway running on the machine.

The tests and the benchmarks both use it: `sandbox.Sandbox` gives a mesh backing services
of its own (Redis, OpenFGA and OPA instances, a database, a Kafka namespace), and
`mesh.Mesh` runs the ingress and the stage workers as real processes against it.
"""
