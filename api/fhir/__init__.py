"""A read-only FHIR R4 view of the devices, their metrics and readings, and the work orders,
for other systems (EHR, CMMS, BI). JSON only (``application/fhir+json``).

    ids.py        FHIR ids for devices, metrics and readings, and back
    resources.py  Device, DeviceMetric, Observation, Task, Bundle, CapabilityStatement
    routes.py     read and search, under /fhir
"""
