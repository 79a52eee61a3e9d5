//! Modbus servers for simulated devices: TCP (several unit ids on one socket) and RTU.
//!
//! Both use tokio-modbus's server skeleton with one [`Service`] that routes a request by unit id
//! to a [`Device`], asks the device which fault applies, and answers from its banks.
//!
//! Unit ids: a known unit id is served by its device. Unit 255 (the Modbus TCP "this device" id)
//! and unit 0 on TCP are routed to the only device when the socket serves exactly one. Unit 0
//! otherwise is a broadcast and gets no reply. Any other unknown unit id gets exception 0x0B
//! (gateway target device failed to respond), as a TCP-to-RTU gateway would answer.
//!
//! Faults that tokio-modbus's server API cannot express are done in the transport: every TCP
//! connection's stream is wrapped in a [`FaultStream`] that shares a small state with the
//! connection's service. Dropping the connection makes the next read return end-of-file, so
//! tokio-modbus ends the connection task and the socket is closed; corrupting a reply rewrites
//! the bytes of the next frame written (its MBAP transaction or protocol id), or writes only
//! half of it and closes. On RTU there is no connection to drop and no frame to rewrite, so those
//! two faults degrade to silence there. A glitch ([`Faults::glitch_once`](super::Faults)) is done
//! in the service: the words of a served register read are replaced in the reply only, on TCP and
//! RTU alike.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use super::device::{Corruption, Device, FaultAction};
use crate::config::Area;

/// Unit id → device, for one socket or one serial line.
pub type UnitMap = BTreeMap<u8, Device>;

/// Serves Modbus TCP on `listener` until `shutdown` is cancelled; then open connections are
/// closed. Returns an error only if accepting connections fails.
pub async fn serve_tcp(
    listener: TcpListener,
    units: UnitMap,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let units = Arc::new(units);
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let units = Arc::clone(&units);
        async move {
            tracing::debug!(%peer, "simulator: client connected");
            let conn = Arc::new(ConnState::default());
            let service = UnitService {
                units,
                conn: Arc::clone(&conn),
            };
            Ok(Some((
                service,
                FaultStream {
                    inner: stream,
                    conn,
                },
            )))
        }
    };
    let on_error =
        |err: io::Error| tracing::debug!(%err, "simulator: connection ended with an error");
    server
        .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
        .await
        .map(|_| ())
}

/// Serves Modbus RTU on a serial stream (a real port or one end of `SerialStream::pair()`) until
/// `shutdown` is cancelled. Drop and corruption faults behave as silence on RTU.
pub async fn serve_rtu(
    serial: tokio_serial::SerialStream,
    units: UnitMap,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let service = UnitService {
        units: Arc::new(units),
        conn: Arc::new(ConnState::default()),
    };
    tokio_modbus::server::rtu::Server::new(serial)
        .serve_until(service, shutdown.cancelled_owned())
        .await
        .map(|_| ())
}

/// What a connection's service tells its transport.
#[derive(Debug, Default)]
struct ConnState {
    /// Close the connection: the next read returns end-of-file.
    close: AtomicBool,
    /// Corrupt the next frame written.
    corrupt: Mutex<Option<Corruption>>,
}

impl ConnState {
    fn corrupt(&self) -> std::sync::MutexGuard<'_, Option<Corruption>> {
        self.corrupt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A TCP stream that can be closed or have its next frame corrupted by the service.
#[derive(Debug)]
struct FaultStream {
    inner: TcpStream,
    conn: Arc<ConnState>,
}

impl AsyncRead for FaultStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.close.load(Ordering::Acquire) {
            return Poll::Ready(Ok(())); // end of file: tokio-modbus ends the connection
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let pending = *this.conn.corrupt();
        // A frame is written by one call on loopback; the flag is cleared only once the
        // corrupted bytes are accepted, so a `Pending` write retries with the same corruption.
        let result = match pending {
            None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            Some(Corruption::TransactionId) => {
                let mut frame = buf.to_vec();
                if frame.len() >= 2 {
                    frame[0] ^= 0x5A;
                    frame[1] ^= 0xA5;
                }
                ready!(Pin::new(&mut this.inner).poll_write(cx, &frame))
            }
            Some(Corruption::ProtocolId) => {
                let mut frame = buf.to_vec();
                if frame.len() >= 4 {
                    frame[2] = 0x12;
                    frame[3] = 0x34;
                }
                ready!(Pin::new(&mut this.inner).poll_write(cx, &frame))
            }
            Some(Corruption::Truncate) => {
                let half = (buf.len() / 2).max(1);
                let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..half]));
                this.conn.close.store(true, Ordering::Release);
                // Claim the whole frame: the rest is never sent.
                written.map(|_| buf.len())
            }
        };
        *this.conn.corrupt() = None;
        Poll::Ready(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The per-connection service: routes by unit id, applies faults, answers from the banks.
#[derive(Debug, Clone)]
struct UnitService {
    units: Arc<UnitMap>,
    conn: Arc<ConnState>,
}

type Reply = Result<Option<Response>, ExceptionCode>;

impl Service for UnitService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Reply> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let single = (self.units.len() == 1)
            .then(|| self.units.values().next())
            .flatten();
        let device = match (self.units.get(&req.slave), req.slave) {
            (Some(d), _) => d.clone(),
            (None, 0 | 255) if single.is_some() => single.cloned().expect("checked: one device"),
            (None, 0) => return Box::pin(std::future::ready(Ok(None))),
            (None, _) => {
                return Box::pin(std::future::ready(Err(ExceptionCode::GatewayTargetDevice)));
            }
        };
        let plan = device.plan(addresses(&req.request));
        let conn = Arc::clone(&self.conn);
        let read = register_read(&req.request);
        let request = req.request;
        Box::pin(async move {
            if !plan.delay.is_zero() {
                tokio::time::sleep(plan.delay).await;
            }
            match plan.action {
                FaultAction::Silence => Ok(None),
                FaultAction::Drop => {
                    conn.close.store(true, Ordering::Release);
                    Ok(None)
                }
                FaultAction::Exception(code) => Err(ExceptionCode::new(code)),
                FaultAction::Serve(corruption) => {
                    let mut response = answer(&device, request)?;
                    if let Some((area, start)) = read {
                        glitch(&device, area, start, &mut response);
                    }
                    if corruption.is_some() {
                        *conn.corrupt() = corruption;
                    }
                    Ok(Some(response))
                }
            }
        })
    }
}

/// The addresses a request touches (for range-limited exceptions).
fn addresses(req: &Request<'_>) -> Option<RangeInclusive<u16>> {
    let span =
        |a: u16, n: usize| a..=a.saturating_add((n.max(1) - 1).min(usize::from(u16::MAX)) as u16);
    match req {
        Request::ReadCoils(a, n)
        | Request::ReadDiscreteInputs(a, n)
        | Request::ReadInputRegisters(a, n)
        | Request::ReadHoldingRegisters(a, n) => Some(span(*a, usize::from(*n))),
        Request::WriteSingleCoil(a, _)
        | Request::WriteSingleRegister(a, _)
        | Request::MaskWriteRegister(a, _, _) => Some(*a..=*a),
        Request::WriteMultipleCoils(a, v) => Some(span(*a, v.len())),
        Request::WriteMultipleRegisters(a, v) => Some(span(*a, v.len())),
        Request::ReadWriteMultipleRegisters(ra, rn, wa, wv) => {
            let r = span(*ra, usize::from(*rn));
            let w = span(*wa, wv.len());
            Some(*r.start().min(w.start())..=*r.end().max(w.end()))
        }
        _ => None,
    }
}

/// The bank and first address of a register read (the read part of FC 23 included).
fn register_read(req: &Request<'_>) -> Option<(Area, u16)> {
    match req {
        Request::ReadInputRegisters(a, _) => Some((Area::Input, *a)),
        Request::ReadHoldingRegisters(a, _) | Request::ReadWriteMultipleRegisters(a, ..) => {
            Some((Area::Holding, *a))
        }
        _ => None,
    }
}

/// Puts the device's pending glitch into the words of a register read's reply, if it covers it.
fn glitch(device: &Device, area: Area, start: u16, response: &mut Response) {
    let words = match response {
        Response::ReadInputRegisters(w)
        | Response::ReadHoldingRegisters(w)
        | Response::ReadWriteMultipleRegisters(w) => w,
        _ => return,
    };
    if let Some(g) = device.take_glitch(area, start, words.len()) {
        let at = usize::from(g.address - start);
        words[at..at + g.words.len()].copy_from_slice(&g.words);
    }
}

fn in_bank(len: usize, addr: u16, count: usize) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let start = usize::from(addr);
    let end = start + count;
    if end <= len {
        Ok(start..end)
    } else {
        Err(ExceptionCode::IllegalDataAddress)
    }
}

fn check_count(count: usize, max: usize) -> Result<(), ExceptionCode> {
    if (1..=max).contains(&count) {
        Ok(())
    } else {
        Err(ExceptionCode::IllegalDataValue)
    }
}

/// Serves one request from the device's banks (reads, and writes to holding registers and coils).
fn answer(device: &Device, request: Request<'_>) -> Result<Response, ExceptionCode> {
    device.with_banks(|banks| match request {
        Request::ReadCoils(a, n) => {
            check_count(usize::from(n), 2000)?;
            let r = in_bank(banks.coils.len(), a, usize::from(n))?;
            Ok(Response::ReadCoils(banks.coils[r].to_vec()))
        }
        Request::ReadDiscreteInputs(a, n) => {
            check_count(usize::from(n), 2000)?;
            let r = in_bank(banks.discrete_inputs.len(), a, usize::from(n))?;
            Ok(Response::ReadDiscreteInputs(
                banks.discrete_inputs[r].to_vec(),
            ))
        }
        Request::ReadHoldingRegisters(a, n) => {
            check_count(usize::from(n), 125)?;
            let r = in_bank(banks.holding.len(), a, usize::from(n))?;
            Ok(Response::ReadHoldingRegisters(banks.holding[r].to_vec()))
        }
        Request::ReadInputRegisters(a, n) => {
            check_count(usize::from(n), 125)?;
            let r = in_bank(banks.input.len(), a, usize::from(n))?;
            Ok(Response::ReadInputRegisters(banks.input[r].to_vec()))
        }
        Request::WriteSingleCoil(a, v) => {
            let r = in_bank(banks.coils.len(), a, 1)?;
            banks.coils[r.start] = v;
            Ok(Response::WriteSingleCoil(a, v))
        }
        Request::WriteMultipleCoils(a, v) => {
            check_count(v.len(), 1968)?;
            let r = in_bank(banks.coils.len(), a, v.len())?;
            banks.coils[r].copy_from_slice(&v);
            Ok(Response::WriteMultipleCoils(a, v.len() as u16))
        }
        Request::WriteSingleRegister(a, w) => {
            let r = in_bank(banks.holding.len(), a, 1)?;
            banks.holding[r.start] = w;
            Ok(Response::WriteSingleRegister(a, w))
        }
        Request::WriteMultipleRegisters(a, ws) => {
            check_count(ws.len(), 123)?;
            let r = in_bank(banks.holding.len(), a, ws.len())?;
            banks.holding[r].copy_from_slice(&ws);
            Ok(Response::WriteMultipleRegisters(a, ws.len() as u16))
        }
        Request::MaskWriteRegister(a, and, or) => {
            let r = in_bank(banks.holding.len(), a, 1)?;
            let cur = banks.holding[r.start];
            banks.holding[r.start] = (cur & and) | (or & !and);
            Ok(Response::MaskWriteRegister(a, and, or))
        }
        Request::ReadWriteMultipleRegisters(ra, rn, wa, ws) => {
            check_count(usize::from(rn), 125)?;
            check_count(ws.len(), 121)?;
            let w = in_bank(banks.holding.len(), wa, ws.len())?;
            let r = in_bank(banks.holding.len(), ra, usize::from(rn))?;
            banks.holding[w].copy_from_slice(&ws);
            Ok(Response::ReadWriteMultipleRegisters(
                banks.holding[r].to_vec(),
            ))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::device::BankSizes;

    fn device() -> Device {
        Device::new(
            "d",
            BankSizes {
                coils: 4,
                discrete_inputs: 4,
                holding: 4,
                input: 4,
            },
            1,
        )
    }

    #[test]
    fn reads_outside_the_bank_are_illegal_data_address() {
        let d = device();
        assert_eq!(
            answer(&d, Request::ReadHoldingRegisters(3, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            answer(&d, Request::ReadInputRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            answer(&d, Request::ReadCoils(0, 4)),
            Ok(Response::ReadCoils(vec![false; 4]))
        );
    }

    #[test]
    fn writes_land_in_holding_and_coils_but_never_grow_them() {
        let d = device();
        assert_eq!(
            answer(&d, Request::WriteMultipleRegisters(1, vec![5, 6].into())),
            Ok(Response::WriteMultipleRegisters(1, 2))
        );
        assert_eq!(d.holding(0, 4), Some(vec![0, 5, 6, 0]));
        assert_eq!(
            answer(&d, Request::WriteSingleRegister(4, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            answer(&d, Request::WriteSingleCoil(2, true)),
            Ok(Response::WriteSingleCoil(2, true))
        );
        assert_eq!(d.coils(2, 1), Some(vec![true]));
        assert_eq!(
            answer(&d, Request::MaskWriteRegister(1, 0x00F0, 0x0003)),
            Ok(Response::MaskWriteRegister(1, 0x00F0, 0x0003))
        );
        assert_eq!(d.holding(1, 1), Some(vec![0x0003]));
    }

    #[test]
    fn request_address_spans() {
        assert_eq!(
            addresses(&Request::ReadHoldingRegisters(10, 4)),
            Some(10..=13)
        );
        assert_eq!(addresses(&Request::WriteSingleCoil(7, true)), Some(7..=7));
        assert_eq!(
            addresses(&Request::ReadWriteMultipleRegisters(
                10,
                2,
                3,
                vec![1].into()
            )),
            Some(3..=11)
        );
    }

    #[tokio::test]
    async fn a_glitch_is_in_one_reply_and_never_in_the_banks() {
        use crate::simulator::device::{Faults, Glitch};
        let d = device();
        d.set_input(0, &[1, 2, 3, 4]);
        d.set_faults(Faults {
            glitch_once: Some(Glitch {
                area: Area::Input,
                address: 2,
                words: vec![0xFFFF, 0xFFFF],
            }),
            ..Faults::default()
        });
        let service = UnitService {
            units: Arc::new(UnitMap::from([(1, d.clone())])),
            conn: Arc::new(ConnState::default()),
        };
        let read = |request: Request<'static>| service.call(SlaveRequest { slave: 1, request });
        // holding registers at the same addresses, and an input read that covers only one of
        // the two words, answer from the banks
        assert_eq!(
            read(Request::ReadHoldingRegisters(0, 4)).await,
            Ok(Some(Response::ReadHoldingRegisters(vec![0; 4])))
        );
        assert_eq!(
            read(Request::ReadInputRegisters(0, 3)).await,
            Ok(Some(Response::ReadInputRegisters(vec![1, 2, 3])))
        );
        assert_eq!(
            read(Request::ReadInputRegisters(1, 3)).await,
            Ok(Some(Response::ReadInputRegisters(vec![2, 0xFFFF, 0xFFFF])))
        );
        assert_eq!(
            read(Request::ReadInputRegisters(1, 3)).await,
            Ok(Some(Response::ReadInputRegisters(vec![2, 3, 4]))),
            "the next reply is true again"
        );
        assert_eq!(d.input(0, 4), Some(vec![1, 2, 3, 4]));
    }
}
