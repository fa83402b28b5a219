"""The core is clean under sanitizers: test_api, fork and concurrent realloc
growth under ASan+UBSan (clang, MESH_DEBUG=3), the threaded stress,
concurrent realloc growth and threads racing initialisation under TSan.

The test programs are linked against the core sources, so the sanitizers
instrument the core itself while libc's malloc (intercepted by ASan/TSan) is
never mixed up with meshalloc's blocks. Skipped only when clang is missing;
.ci/run installs it with libclang-rt-14-dev.
"""
import os
import re
import shutil
import subprocess

import pytest



@pytest.fixture(autouse=True)
def _clang_present():
    """Skipped without clang, said loudly at the end of the run (conftest's
    summary); with MESHALLOC_REQUIRE_SANITIZERS set (.ci/run) a failure."""
    if shutil.which("clang") is None:
        why = "clang is not installed (.ci/run installs clang and libclang-rt-14-dev)"
        if os.environ.get("MESHALLOC_REQUIRE_SANITIZERS"):
            pytest.fail(why + "; MESHALLOC_REQUIRE_SANITIZERS is set", pytrace=False)
        conftest_skips().append(why)
        pytest.skip(why)


def conftest_skips() -> list:
    import conftest  # noqa: PLC0415 (tests/ is on sys.path under pytest's rootdir conftest)
    return conftest._SANITIZER_SKIPS


def sanitizer_report(text: str) -> bool:
    return bool(re.search(r"ERROR: (Address|Thread|Undefined|Leak)Sanitizer|WARNING: ThreadSanitizer|"
                          r"runtime error:", text))


def run_sanitized(helpers, exe, args, timeout, **env):
    r = helpers.run([exe, *args], timeout=timeout, pss_cap=4 * helpers.GIB,
                    env=helpers.env(**helpers.sanitizer_env, **env))
    if r.killed or r.returncode != 0 or sanitizer_report(r.stderr):
        pytest.fail(f"{exe.name} {' '.join(map(str, args))} under a sanitizer failed\n"
                    f"{r.describe(tail=150)}", pytrace=False)
    return r


def test_api_is_clean_under_asan_ubsan(helpers, cbuild):
    r = run_sanitized(helpers, cbuild("test_api", "asan"), ["1"], timeout=400)
    assert re.search(r"^\d+ passed, 0 failed$", r.stdout, re.M), r.describe()


@pytest.mark.parametrize("case", ["isolation", "threads", "nested", "spawn"])
def test_fork_is_clean_under_asan_ubsan(helpers, cbuild, case):
    run_sanitized(helpers, cbuild("fork", "asan"), [case], timeout=400)


@pytest.mark.parametrize("case", ["never", "second", "refused"])
def test_frozen_generations_are_clean_under_asan_ubsan(helpers, cbuild, case):
    run_sanitized(helpers, cbuild("fork_frozen", "asan"), [case], timeout=400)


def test_undoing_a_mesh_the_kernel_refused_is_clean_under_asan_ubsan(helpers, cbuild):
    r = run_sanitized(helpers, cbuild("mesh_faults", "asan"), [], timeout=400)
    assert "mesh_faults ok" in r.stdout, r.describe()



@pytest.mark.parametrize("seed", [7, 8])
def test_stress_is_clean_under_tsan(helpers, cbuild, seed):
    r = run_sanitized(helpers, cbuild("stress", "tsan"), [seed, 3, 200000, 200], timeout=500)
    assert "stress ok" in r.stdout


def test_concurrent_realloc_growth_is_clean_under_tsan(helpers, cbuild):
    r = run_sanitized(helpers, cbuild("realloc_grow", "tsan"), [3, 8, 512, 9], timeout=500)
    assert "realloc_grow ok" in r.stdout


def test_first_allocations_of_threads_racing_initialisation_are_clean_under_tsan(helpers, cbuild):
    """A fresh process each time: initialisation happens once per process.
    Before the size-class table was read with atomics, every run reported a
    data race (5 of 5)."""
    exe = cbuild("init_race", "tsan")
    for _ in range(5):
        r = run_sanitized(helpers, exe, [4], timeout=120)
        assert "init_race ok" in r.stdout, r.describe()


def test_concurrent_realloc_growth_is_clean_under_asan_ubsan(helpers, cbuild):
    r = run_sanitized(helpers, cbuild("realloc_grow", "asan"), [3, 8, 512, 10], timeout=500)
    assert "realloc_grow ok" in r.stdout


PLANTED = {
    "asan": ("int main(int argc, char **argv) { char b[8]; volatile char *p = b; p[7 + argc] = 1; return p[0]; }\n",
             "AddressSanitizer"),
    "ubsan": ("#include <limits.h>\nint main(int argc, char **argv) { int x = INT_MAX - 1; x += argc + 1; return x == 3; }\n",
              "runtime error"),
    "tsan": ("#include <pthread.h>\nint counter;\n"
             "static void *bump(void *a) { for (int i = 0; i < 100000; i++) counter++; return a; }\n"
             "int main(void) { pthread_t t[2]; for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, bump, 0);\n"
             "  for (int i = 0; i < 2; i++) pthread_join(t[i], 0); return counter == 3; }\n",
             "ThreadSanitizer: data race"),
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_sanitizer_toolchain_catches_a_planted_bug(helpers, tmp_path, kind):
    """A green sanitizer run means something only if the sanitizer works here."""
    source, expected = PLANTED[kind]
    cc, flags = helpers.configs["tsan" if kind == "tsan" else "asan"]
    (tmp_path / "planted.c").write_text(source)
    exe = tmp_path / "planted"
    p = subprocess.run([cc, *flags, str(tmp_path / "planted.c"), "-o", str(exe), "-pthread"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = helpers.run([exe], timeout=60, env=helpers.env(**helpers.sanitizer_env))
    assert r.returncode != 0 and expected in r.stderr, r.describe()
