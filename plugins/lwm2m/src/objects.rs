//! The objects Drover knows by name: /3 Device and /5 Firmware Update (OMA LwM2M core),
//! with each resource's name and type. Needed to read untyped TLV, and to turn readings
//! into device metadata and telemetry.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Integer,
    Float,
    Boolean,
    Opaque,
    Time,
    Execute,
}

/// (object, resource, name, type).
const RESOURCES: &[(u16, u16, &str, Type)] = &[
    (3, 0, "Manufacturer", Type::String),
    (3, 1, "ModelNumber", Type::String),
    (3, 2, "SerialNumber", Type::String),
    (3, 3, "FirmwareVersion", Type::String),
    (3, 4, "Reboot", Type::Execute),
    (3, 5, "FactoryReset", Type::Execute),
    (3, 6, "AvailablePowerSources", Type::Integer),
    (3, 7, "PowerSourceVoltage", Type::Integer),
    (3, 8, "PowerSourceCurrent", Type::Integer),
    (3, 9, "BatteryLevel", Type::Integer),
    (3, 10, "MemoryFree", Type::Integer),
    (3, 11, "ErrorCode", Type::Integer),
    (3, 12, "ResetErrorCode", Type::Execute),
    (3, 13, "CurrentTime", Type::Time),
    (3, 14, "UTCOffset", Type::String),
    (3, 15, "Timezone", Type::String),
    (3, 16, "SupportedBindingAndModes", Type::String),
    (3, 17, "DeviceType", Type::String),
    (3, 18, "HardwareVersion", Type::String),
    (3, 19, "SoftwareVersion", Type::String),
    (3, 20, "BatteryStatus", Type::Integer),
    (3, 21, "MemoryTotal", Type::Integer),
    (5, 0, "Package", Type::Opaque),
    (5, 1, "PackageURI", Type::String),
    (5, 2, "Update", Type::Execute),
    (5, 3, "State", Type::Integer),
    (5, 5, "UpdateResult", Type::Integer),
    (5, 6, "PkgName", Type::String),
    (5, 7, "PkgVersion", Type::String),
    (5, 8, "FirmwareUpdateProtocolSupport", Type::Integer),
    (5, 9, "FirmwareUpdateDeliveryMethod", Type::Integer),
];

fn find(path: &[u16]) -> Option<&'static (u16, u16, &'static str, Type)> {
    let (&object, &resource) = (path.first()?, path.get(2)?);
    RESOURCES.iter().find(|r| r.0 == object && r.1 == resource)
}

/// The type of the resource a path (object/instance/resource[/instance]) names.
pub fn resource_type(path: &[u16]) -> Option<Type> {
    find(path).map(|r| r.3)
}

/// The name of the resource a path names.
pub fn resource_name(path: &[u16]) -> Option<&'static str> {
    find(path).map(|r| r.2)
}

/// Firmware Update State (5/0/3).
pub fn firmware_state(state: i64) -> &'static str {
    match state {
        0 => "idle",
        1 => "downloading",
        2 => "downloaded",
        3 => "updating",
        _ => "unknown",
    }
}

/// Firmware Update Result (5/0/5), 0–11 in LwM2M 1.1.
pub fn update_result(result: i64) -> &'static str {
    match result {
        0 => "initial value",
        1 => "firmware updated successfully",
        2 => "not enough flash memory for the new firmware package",
        3 => "out of RAM during downloading",
        4 => "connection lost during downloading",
        5 => "integrity check failure for the new firmware package",
        6 => "unsupported package type",
        7 => "invalid URI",
        8 => "firmware update failed",
        9 => "unsupported protocol",
        10 => "firmware update cancelled",
        11 => "deferred",
        _ => "unknown result",
    }
}
