#!/usr/bin/env python3
# Usage: python3 examples/bench/block_check.py host/migrations/sqlite  (docs/BENCHMARKS.md)
# The block check's cost in the queue read, on SQLite: the poll's queue statement with and
# without the `not_held_back` clause, on Drover's own schema (its migrations), 20,000
# devices with one pending operation each and a compliance record each (none blocked).
import glob, sqlite3, time, statistics, sys
db = sqlite3.connect(":memory:")
for f in sorted(glob.glob(sys.argv[1] + "/*.sql")):
    db.executescript(open(f).read())
N = 20000
now = 1
db.execute("INSERT INTO activities (code, kind, payload, created_by, created_at, expires_at, max_attempts) VALUES ('DEVICE_RING','command',NULL,'bench',1,NULL,1)")
cols = [r[1] for r in db.execute("PRAGMA table_info(devices)")]
for i in range(1, N + 1):
    db.execute("INSERT INTO devices (id, device_type, device_id, name, ownership, status, metadata, enrolled_at) VALUES (?, 'android', ?, '', 'BYOD', 'active', '{}', 1)", (i, f"d{i}"))
    db.execute("INSERT INTO operations (activity, device, code, kind, state, attempts, created_at, updated_at, max_attempts) VALUES (1, ?, 'DEVICE_RING', 'command', 'PENDING', 0, 1, 1, 1)", (i,))
    db.execute("INSERT INTO device_compliance (device, state, checks, since, evaluated_at, blocked) VALUES (?, 'compliant', '[]', 1, 1, 0)", (i,))
db.commit()
db.execute("ANALYZE")
base = """SELECT o.id, o.code, o.kind, a.payload, o.expires_at, o.state FROM operations o
 JOIN activities a ON a.id = o.activity
 WHERE o.device = ?1 AND o.state IN ('PENDING', 'NOTNOW') AND {} ORDER BY o.id LIMIT ?2"""
held = "(o.kind = 'policy' OR NOT EXISTS (SELECT 1 FROM device_compliance b WHERE b.device = o.device AND b.blocked = 1))"
variants = {"without the check": base.format("1 = 1"), "with the check": base.format(held)}
for name, sql in variants.items():
    print(name, "plan:", [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, (1, 100))])
rounds = {k: [] for k in variants}
for r in range(7):
    for name, sql in variants.items():
        t = time.perf_counter()
        for i in range(1, N + 1):
            db.execute(sql, (i, 100)).fetchall()
        rounds[name].append((time.perf_counter() - t) / N * 1e6)
for name, v in rounds.items():
    print(f"{name}: median {statistics.median(v):.2f} µs per queue read (rounds: {', '.join(f'{x:.2f}' for x in v)})")
a, b = (statistics.median(v) for v in rounds.values())
print(f"the check adds {b - a:.2f} µs per queue read")
