"""KRE v1's ``ctx.db`` and ``ctx.prediction`` storage, apart from NATS: the mongo-writer's wire format, the
prediction document, equality matching, the local SQLite store that ``up`` writes, and the readers behind
``ctx.db.find`` (MongoDB through pymongo, the local store, or documents kept in memory by ``krt_runner.testing``).
"""
