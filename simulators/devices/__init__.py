"""The simulated device kinds, by the kind name the site config uses."""

from simulators.devices.autoclave import AutoclaveModel
from simulators.devices.base import DeviceModel
from simulators.devices.compressor import CompressorModel
from simulators.devices.copier import CopierModel
from simulators.devices.infusion_pump import InfusionPumpModel
from simulators.devices.ups import UpsModel
from simulators.devices.vaccine_fridge import VaccineFridgeModel
from simulators.devices.xray import XrayModel

__all__ = ["MODELS"]

MODELS: dict[str, type[DeviceModel]] = {
    model.kind: model
    for model in (
        AutoclaveModel,
        VaccineFridgeModel,
        XrayModel,
        InfusionPumpModel,
        UpsModel,
        CopierModel,
        CompressorModel,
    )
}
