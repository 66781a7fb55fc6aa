"""Prints the slowest test cases of a nextest JUnit report: `slowest-tests.py REPORT [N]`."""

import sys
import xml.etree.ElementTree as ET


def main() -> None:
    report = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    cases = []
    for case in ET.parse(report).getroot().iter("testcase"):
        cases.append((float(case.get("time", "0")), f"{case.get('classname')} {case.get('name')}"))
    cases.sort(reverse=True)
    total = sum(t for t, _ in cases)
    print(f"== the {min(count, len(cases))} slowest of {len(cases)} tests ({total:.0f} s of test time in all)")
    for secs, name in cases[:count]:
        print(f"{secs:9.1f} s  {name}")


if __name__ == "__main__":
    main()
