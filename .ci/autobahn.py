#!/usr/bin/env python3
"""Checks a kosoku (Autobahn) report: every case of groups 1-10 and 12-13 (permessage-deflate) must be
OK (7.1.6, 7.13.1 and 7.13.2 are INFORMATIONAL by design), and every case's outcome must equal the
committed expected results, so that any change fails CI. Usage: autobahn.py INDEX_JSON EXPECTED_TXT [--update]"""
import json
import sys

INFORMATIONAL = {"7.1.6", "7.13.1", "7.13.2"}


def key(case):
    return tuple(int(p) for p in case.split("."))


def main():
    index, expected_path = sys.argv[1], sys.argv[2]
    update = "--update" in sys.argv
    report = json.load(open(index))
    (agent, cases), = report.items()
    lines = []
    bad = []
    counts = {}
    for case in sorted(cases, key=key):
        r = cases[case]
        outcome = f"{case} {r['behavior']} {r['behaviorClose']}"
        lines.append(outcome)
        counts[r["behavior"]] = counts.get(r["behavior"], 0) + 1
        group = key(case)[0]
        if group <= 10 or group in (12, 13):
            want = "INFORMATIONAL" if case in INFORMATIONAL else "OK"
            if r["behavior"] != want or r["behaviorClose"] not in ("OK", "INFORMATIONAL"):
                bad.append(outcome)
    print(f"{agent}: {len(cases)} cases: " + ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
    text = "\n".join(lines) + "\n"
    if update:
        open(expected_path, "w").write(text)
        print(f"wrote {expected_path}")
    failed = False
    if bad:
        print("cases of groups 1-10, 12 and 13 not OK:")
        print("\n".join("  " + b for b in bad))
        failed = True
    try:
        expected = open(expected_path).read()
    except FileNotFoundError:
        print(f"missing {expected_path} (run with --update to create it)")
        sys.exit(1)
    if expected != text:
        import difflib
        print("outcomes differ from " + expected_path + ":")
        sys.stdout.writelines(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "expected", "got"))
        failed = True
    outcomes = [l.split()[1] for l in lines]
    passed = sum(1 for o in outcomes if o in ("OK", "INFORMATIONAL"))
    skipped = sum(1 for o in outcomes if o == "UNIMPLEMENTED")
    print(f"conformance: {passed} passed, {len(lines) - passed - skipped} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
