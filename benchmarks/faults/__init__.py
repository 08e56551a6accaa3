"""The fault suite: real worker processes, real databases and brokers, injected faults.

``python -m benchmarks.faults`` runs named scenarios (see :mod:`benchmarks.faults.scenarios`)
against PostgreSQL or MariaDB and Kafka (a Tansu started here) or Redis Streams (a
``redis-server`` started here), then checks that the fault happened (counted facts) and the
handlers' business table against what was published: nothing lost, nothing applied twice,
only the poisoned events dead. The layout:

* :mod:`~benchmarks.faults.settings`: the run's knobs and the engine settings the workers use;
* :mod:`~benchmarks.faults.app`: the worker application (``outboxkit worker ...app:build``);
* :mod:`~benchmarks.faults.publisher`: the publisher process;
* :mod:`~benchmarks.faults.brokers`, :mod:`~benchmarks.faults.database`: the services;
* :mod:`~benchmarks.faults.processes`: starting, killing and stopping processes;
* :mod:`~benchmarks.faults.injectors`: the faults;
* :mod:`~benchmarks.faults.scenarios`: what each scenario does, and running one;
* :mod:`~benchmarks.faults.report`: counting, the verdict, the table and the JSON.
"""
