//! The registry of device drivers: which run as a task of their own, and running one.
//!
//! What a task is given and how it ends are [`DriverContext`] and [`DriverError`] (in `crate::context`, which the
//! drivers import; re-exported here).

pub use crate::context::{DriverContext, DriverError};

/// True for drivers that run one task per device (the gateway drives the device: over a byte stream, or the 4370
/// protocol). MQTT and ADMS devices are served by shared listeners instead.
pub fn is_task_driver(kind: crate::config::DriverKind) -> bool {
    kind.is_serial() || kind == crate::config::DriverKind::Zk4370
}

/// Runs the driver task for one device until cancelled.
pub async fn run(ctx: DriverContext) -> Result<(), DriverError> {
    match ctx.device.driver {
        crate::config::DriverKind::Pn532 => crate::pn532::run(ctx).await,
        crate::config::DriverKind::R30x => crate::r30x::run(ctx).await,
        crate::config::DriverKind::Zk4370 => crate::zk4370::run(ctx).await,
        other => Err(DriverError::Device {
            device: ctx.device.id.clone(),
            message: format!("driver {other} is served by a shared listener, not a device task"),
        }),
    }
}
