"""The report as JUnit XML, one test case per check, for CI systems that read JUnit."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from retrysafe.check._steps import Report


def junit_xml(report: Report) -> str:
    """JUnit XML: a failed case is a ``<failure>``, a skipped one a ``<skipped>``; ``should`` and
    ``info`` cases that fail are reported as failures too, with their level in the name."""
    summary = report.summary
    suite = ET.Element(
        "testsuite",
        name=f"retrysafe check {report.method} {report.url}",
        tests=str(len(report.cases)),
        failures=str(summary["failed"]),
        skipped=str(summary["skipped"]),
        errors="0",
    )
    for case in report.cases:
        element = ET.SubElement(
            suite, "testcase", classname=f"idempotency.{case.level}", name=case.id
        )
        text = f"{case.title}: {case.detail} [{case.reference}]"
        if case.result == "fail":
            ET.SubElement(element, "failure", message=case.detail).text = text
        elif case.result == "skip":
            ET.SubElement(element, "skipped", message=case.detail)
        else:
            ET.SubElement(element, "system-out").text = text
    suites = ET.Element("testsuites")
    suites.append(suite)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)
