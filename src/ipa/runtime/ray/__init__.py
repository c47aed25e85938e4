"""The real runtime: the pipeline on Ray Serve.

`media` (what a request carries, checked and decoded), `replica` (a stage's model on batches), `ingress` (HTTP,
admission, the stages in order), `ledger` (what every ingress replica saw, in one place), `direct` (the ingress's
own sockets to the stage replicas), `app` (the bound application for a config), `cluster` (start or join a cluster,
its ports and environment, stop it), `runtime` (the `adapt.Runtime` adapter the control loop drives) and `overhead`
(the profiler of serving's own cost, which serves the pipeline to measure it).
"""
