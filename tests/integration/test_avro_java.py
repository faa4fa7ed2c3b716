"""Java's Avro library, an independent implementation, agrees with our fingerprints and
reads our single-object messages (BinaryMessageDecoder)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sluice.avro import BUNDLED_SCHEMAS, SchemaSet, SingleObjectSerde
from sluice.config import project_root

pytestmark = pytest.mark.integration
ROOT = project_root()


@pytest.fixture(scope="module")
def avro_java_classpath() -> str:
    jars = ROOT / ".cache" / "avro-java"
    if not any(jars.glob("avro-*.jar")):
        if shutil.which("mvn") is None:
            pytest.fail("mvn is needed to fetch the Java Avro library (apt-get install maven)")
        subprocess.run(["mvn", "-q", "-B", "-f", str(ROOT / "tests" / "java" / "pom.xml"), "dependency:copy-dependencies",
                        f"-DoutputDirectory={jars}"], check=True)
    return str(jars / "*")


def java(classpath: str, *args: str) -> str:
    out = subprocess.run(["java", "-cp", classpath, str(ROOT / "tests" / "java" / "AvroCheck.java"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_java_fingerprints_equal_ours_for_every_schema_of_every_version(avro_java_classpath: str, schemas: SchemaSet) -> None:
    compared = 0
    for folder in sorted(BUNDLED_SCHEMAS.glob("v*")):
        version = int(folder.name[1:])
        for line in java(avro_java_classpath, "fingerprints", str(folder)).splitlines():
            name, hex_fp = line.split()
            ours = next(v for v in schemas.versions(name) if v.canonical_form == _canonical_of(schemas, name, version))
            assert f"{ours.fingerprint:016x}" == hex_fp, f"{name} in {folder.name}"
            compared += 1
    assert compared >= 2 * 11


def _canonical_of(schemas: SchemaSet, name: str, version: int) -> str:
    # The version that was current in contract set `version`: the newest kept one not after it.
    return [v for v in schemas.versions(name) if v.version <= version][-1].canonical_form


def test_java_binary_message_decoder_reads_our_messages(avro_java_classpath: str, serde: SingleObjectSerde) -> None:
    serve = {"event_id": "e-1", "serve_id": "s-1", "experiment_id": "ranking", "entity": "adv", "unit_id": "ü-1",
             "arm": "model-b", "in_experiment": True, "propensity": 0.125, "weights_version": 9, "bucket": 77,
             "timestamp": 1_763_900_000_123, "context": {"k": "v"}}
    table = {"event_id": "w-1", "experiment_id": "ranking", "entity": "adv", "version": 3, "num_buckets": 10_000,
             "arms": [{"arm": "a", "weight": 0.75, "buckets": 7500, "ranges": [{"start": 0, "end": 7500}]},
                      {"arm": "b", "weight": 0.25, "buckets": 2500, "ranges": [{"start": 7500, "end": 10_000}]}],
             "policy": "thompson", "reason": "r", "statistics": [{"arm": "a", "serves": 10, "count": 10, "sum": 3.0, "sum_squares": 3.0}],
             "window_start": 1, "window_end": 2, "computed_at": 3}
    newest = str(BUNDLED_SCHEMAS / f"v{serde.schemas.latest('ServeEvent').version}")  # the folder writers use
    out = java(avro_java_classpath, "decode", newest, "io.sluice.ServeEvent", serde.encode("ServeEvent", serve).hex())
    assert '"unit_id": "ü-1"' in out and '"propensity": 0.125' in out and '"timestamp": 1763900000123' in out
    out = java(avro_java_classpath, "decode", newest, "io.sluice.WeightTable", serde.encode("WeightTable", table).hex())
    assert '"ranges": [{"start": 7500, "end": 10000}]' in out and '"sum_squares": 3.0' in out
