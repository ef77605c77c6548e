"""Fault tests: real gateway, sidecar, Redis and webhook receiver processes on 127.0.0.1, each
checking that no prediction failed that should not have and that no record or alert was lost.

Where each fault is covered:

- sidecar SIGKILL and restart under load: test_sidecar_kill.py (and, on a prepared log at five
  kill points, file and Redis, tests/sidecar/test_restart.py);
- gateway SIGTERM under load with two workers, every answered record kept:
  tests/gateway/test_predlog_server.py::test_sigterm_during_load_keeps_every_answered_record;
- gateway SIGKILL under load, the loss measured: test_gateway_kill.py;
- Redis stopped and started under load (spill and replay): test_redis_outage.py (and, at the
  writer level, tests/gateway/test_predlog_redis.py);
- the log's disk full: test_disk_full.py; a full in-memory queue:
  tests/gateway/test_predlog_server.py::test_full_queue_drops_and_counts_never_fails;
- a webhook receiver that hangs: test_webhook_hang.py (retries, Retry-After, refused
  connections and dead letters: tests/sidecar/test_delivery.py);
- a corrupt artifact, a truncated manifest, a version deleted while serving, a config file
  replaced by garbage or swapped the way Kubernetes updates a ConfigMap: test_registry_faults.py
  (invalid configs through POST /admin/reload: tests/gateway/test_traffic.py);
- a model whose predict raises or hangs: test_model_faults.py;
- the soak runner on a short run: test_soak_runner.py.
"""
