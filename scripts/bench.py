"""The body of scripts/bench: runs each command a few times, keeps the median wall time and
the largest peak RSS (GNU time's %M), and prints everything side by side."""

import json
import os
import shutil
import statistics
import subprocess
import sys

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PG = os.environ["PG_URL"]
BASE = PG.rsplit("/", 1)[0]
DB = "backstop_bench"
URL = f"{BASE}/{DB}"
BACKSTOP = os.environ["BACKSTOP"]
ROOT = os.environ["ROOT"]
WORK = os.path.join(os.environ["TMP"], "bench")
S3 = os.environ["BACKSTOP_TEST_S3_ENDPOINT"]
ENV = dict(os.environ)
ENV.update(
    AWS_ACCESS_KEY_ID=os.environ["BACKSTOP_TEST_S3_ACCESS_KEY"],
    AWS_SECRET_ACCESS_KEY=os.environ["BACKSTOP_TEST_S3_SECRET_KEY"],
    AWS_DEFAULT_REGION="us-east-1",
    BACKSTOP_DATABASE_URL=URL,
)
AWS = [os.path.join(ROOT, ".venv/bin/aws"), "--endpoint-url", S3]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, env=ENV, **kw)


def psql(sql, db=URL):
    return sh(f"psql '{db}' -qAtX -v ON_ERROR_STOP=1 -c \"{sql}\"", capture_output=True, text=True).stdout.strip()


def measure(cmd, before=None):
    """Median seconds and max peak RSS (MiB) over RUNS runs."""
    times, rss = [], []
    for _ in range(RUNS):
        if before:
            before()
        out = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "bash", "-o", "pipefail", "-c", cmd],
            env=ENV, capture_output=True, text=True,
        )
        if out.returncode != 0:
            sys.exit(f"failed: {cmd}\n{out.stdout}\n{out.stderr}")
        e, m = out.stderr.strip().splitlines()[-1].split()
        times.append(float(e))
        rss.append(int(m) / 1024)
    return statistics.median(times), max(rss)


def config(name, body):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(f'[migrations]\ndir = "{ROOT}/migrations"\n{body}\n')
    return path


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    print(f"==> bench database {DB}: {ROWS} tasks rows", file=sys.stderr)
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", PG)
    psql(f"CREATE DATABASE {DB}", PG)
    sh(f"{BACKSTOP} -q --config {config('mig.toml', '')} upgrade >/dev/null")
    psql(
        "INSERT INTO tasks (title, description, completed, user_id, created_at, updated_at) "
        "SELECT 'task number ' || g, md5(g || 'a') || ' ' || md5(g || 'b') || ' ' || md5(g || 'c') || ' ' "
        "|| md5(g || 'd') || ' ' || md5(g || 'e') || ' ' || md5(g || 'f'), g % 3 = 0, "
        "'user-' || (g % 1000), now() - g * interval '1 second', now() FROM generate_series(1, " + str(ROWS) + ") g"
    )
    psql("VACUUM ANALYZE tasks")
    sh(f"aws_bucket=1; {' '.join(AWS)} s3 mb s3://bench >/dev/null 2>&1 || true")
    csv = os.path.join(WORK, "tasks.csv")
    copy_out = "\\\\copy (SELECT * FROM tasks) TO STDOUT WITH (FORMAT csv, HEADER)"
    sh(f"psql '{URL}' -qX -c \"{copy_out}\" > {csv}")
    csv_bytes = os.path.getsize(csv)

    results = {}
    results["raw COPY to /dev/null (psql \\copy)"] = measure(
        f"psql '{URL}' -qX -c \"\\\\copy (SELECT * FROM tasks) TO '/dev/null' WITH (FORMAT csv, HEADER)\""
    )
    results["DIY: psql \\copy | zstd -3 | aws s3 cp -"] = measure(
        f"psql '{URL}' -qX -c \"{copy_out}\" | zstd -3 -q -c | {' '.join(AWS)} s3 cp - s3://bench/diy.csv.zst"
    )
    dump = os.path.join(WORK, "tasks.dump")
    results["pg_dump -Fc -t tasks"] = measure(f"pg_dump -Fc -t tasks -f {dump} '{URL}'")

    sizes = {}
    for level in (1, 3):
        cfg = config(f"dir{level}.toml", f'[storage]\nurl = "{WORK}/store{level}"\n[backup]\nzstd_level = {level}\n')
        results[f"backstop backup, directory, zstd {level}"] = measure(f"{BACKSTOP} -q --config {cfg} backup >/dev/null")
        last = json.loads(sh(f"{BACKSTOP} --json --config {cfg} backups list", capture_output=True, text=True).stdout)
        sizes[level] = last["backups"][0]["compressed_bytes"]
    for level in (1, 3):
        cfg = config(
            f"s3{level}.toml",
            f'[storage]\nurl = "s3://bench/backstop{level}"\nendpoint = "{S3}"\nregion = "us-east-1"\n'
            f"force_path_style = true\n[backup]\nzstd_level = {level}\n",
        )
        results[f"backstop backup, SeaweedFS S3, zstd {level}"] = measure(f"{BACKSTOP} -q --config {cfg} backup >/dev/null")

    truncate = lambda: psql("TRUNCATE tasks")  # noqa: E731
    results["psql \\copy FROM csv (indexed table)"] = measure(
        f"psql '{URL}' -qX -c \"\\\\copy tasks FROM '{csv}' WITH (FORMAT csv, HEADER)\"", truncate
    )
    results["pg_restore --data-only"] = measure(f"pg_restore --data-only -d '{URL}' {dump}", truncate)
    cfg3 = os.path.join(WORK, "dir3.toml")
    backup_id = json.loads(sh(f"{BACKSTOP} --json --config {cfg3} backups list", capture_output=True, text=True).stdout)["backups"][0]["id"]
    results["backstop restore --mode truncate (directory)"] = measure(
        f"{BACKSTOP} -q --config {cfg3} restore {backup_id} --mode truncate >/dev/null"
    )
    cfgs3 = os.path.join(WORK, "s33.toml")
    s3_id = json.loads(sh(f"{BACKSTOP} --json --config {cfgs3} backups list", capture_output=True, text=True).stdout)["backups"][0]["id"]
    results["backstop restore --mode truncate (SeaweedFS S3)"] = measure(
        f"{BACKSTOP} -q --config {cfgs3} restore {s3_id} --mode truncate >/dev/null"
    )

    raw = results["raw COPY to /dev/null (psql \\copy)"][0]
    load = results["psql \\copy FROM csv (indexed table)"][0]
    print(f"\n{ROWS} rows, {csv_bytes / 2**20:.0f} MiB of CSV; median of {RUNS} runs; peak RSS is the largest process\n")
    print(f"{'command':<52} {'seconds':>8} {'ratio':>16} {'peak RSS':>10}")
    for name, (secs, rss) in results.items():
        if name.startswith(("backstop restore", "pg_restore", "psql \\copy FROM")):
            ratio = f"{secs / load:.2f}x load"
        else:
            ratio = f"{secs / raw:.2f}x raw"
        print(f"{name:<52} {secs:>8.2f} {ratio:>16} {rss:>7.0f} MiB")
    print()
    for level, size in sizes.items():
        print(f"zstd level {level}: {size / 2**20:.1f} MiB stored, compression ratio {csv_bytes / size:.2f}")
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", PG)


def compressible():
    """Peak memory on data that compresses about a thousandfold: 1,200 rows of 1 MiB of one
    repeated character, backed up to S3, verified and restored; and a zstd bomb."""
    db, url = "backstop_bench_blobs", f"{BASE}/backstop_bench_blobs"
    os.makedirs(WORK, exist_ok=True)
    shutil.rmtree(os.path.join(WORK, "bomb"), ignore_errors=True)
    sh(f"{' '.join(AWS)} s3 mb s3://bench >/dev/null 2>&1 || true")
    psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", PG)
    psql(f"CREATE DATABASE {db}", PG)
    psql("CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL)", url)
    psql("INSERT INTO blobs SELECT g, repeat('a', 1048576) FROM generate_series(1, 1200) g", url)
    env = dict(ENV, BACKSTOP_DATABASE_URL=url)
    cfg = config(
        "blobs.toml",
        f'[storage]\nurl = "s3://bench/blobs"\nendpoint = "{S3}"\nregion = "us-east-1"\nforce_path_style = true\n',
    )
    bomb_cfg = config("bomb.toml", f'[storage]\nurl = "{WORK}/bomb"\n')

    def peak(cmd):
        out = subprocess.run(["/usr/bin/time", "-f", "%e %M", "bash", "-c", cmd], env=env, capture_output=True, text=True)
        e, m = out.stderr.strip().splitlines()[-1].split()
        return out.returncode, float(e), int(m) / 1024

    rows = []
    code, secs, mib = peak(f"{BACKSTOP} -q --config {cfg} backup > {WORK}/blobs.id")
    if code != 0:
        sys.exit(f"the backup of blobs failed (exit {code})")
    backup_id = open(f"{WORK}/blobs.id").read().split()[0]
    listing = json.loads(subprocess.run(f"{BACKSTOP} --json --config {cfg} backups show {backup_id}", shell=True, env=env, capture_output=True, text=True).stdout)
    entry = listing["tables"][0]
    rows.append(("backup (S3)", code, secs, mib))
    rows.append(("backups verify", *peak(f"{BACKSTOP} -q --config {cfg} backups verify {backup_id} >/dev/null")))
    rows.append(("restore --mode truncate", *peak(f"{BACKSTOP} -q --config {cfg} restore {backup_id} --mode truncate >/dev/null")))
    # The bomb: a small table's object replaced by 1 GiB of one byte, compressed.
    psql("CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 10)", url)
    sh(f"BACKSTOP_DATABASE_URL={url} {BACKSTOP} -q --config {bomb_cfg} backup --table small > {WORK}/bomb.id")
    bomb_id = open(f"{WORK}/bomb.id").read().split()[0]
    obj = f"{WORK}/bomb/{bomb_id}/public.small.csv.zst"
    sh(f"head -c 1073741824 /dev/zero | zstd -q -3 -c > {obj}.new && mv {obj}.new {obj}")
    manifest_path = f"{WORK}/bomb/{bomb_id}/manifest.json"
    m = json.load(open(manifest_path))
    import hashlib
    data = open(obj, "rb").read()
    m["tables"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    m["tables"][0]["compressed_bytes"] = len(data)
    json.dump(m, open(manifest_path, "w"))
    rows.append((f"verify of a {len(data) // 1024} KiB object that expands to 1 GiB", *peak(f"{BACKSTOP} -q --config {bomb_cfg} backups verify {bomb_id} >/dev/null 2>&1")))
    print(f"\n1,200 rows of 1 MiB of one character: {entry['bytes'] / 2**20:.0f} MiB of CSV stored as "
          f"{entry['compressed_bytes'] / 2**10:.0f} KiB (ratio {entry['bytes'] / entry['compressed_bytes']:.0f})\n")
    print(f"{'command':<52} {'exit':>5} {'seconds':>8} {'peak RSS':>10}")
    for name, code, secs, mib in rows:
        print(f"{name:<52} {code:>5} {secs:>8.2f} {mib:>7.0f} MiB")
    psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", PG)


# BENCH_ONLY=compressible runs the memory part alone.
if os.environ.get("BENCH_ONLY") != "compressible":
    main()
compressible()
