//! The agent as a separate process: its generated configuration, spawning and stopping it, and
//! reading a counter from its `/metrics`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::plant::Plant;
use super::{Params, PollSchedule, SITE, point_name};

pub(super) fn write_agent_config(
    p: &Params,
    plant: &Plant,
    broker: u16,
    http: u16,
    dir: &Path,
) -> PathBuf {
    let mut csv = String::from("name,area,address,type\n");
    for r in 0..p.registers {
        csv.push_str(&format!("{},holding,{r},u16\n", point_name(r)));
    }
    std::fs::write(dir.join("synth.csv"), csv).expect("write the register map");
    let poll = humantime::format_duration(p.interval);
    let mut toml = format!(
        "site = \"{SITE}\"\nstate_dir = \"state\"\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n\n\
         [register_maps.synth]\ncsv = \"synth.csv\"\n"
    );
    let mut first = 1;
    let devices: Vec<usize> = plant.endpoints.iter().map(|(_, _, d)| d.len()).collect();
    for (i, (addr, source, names)) in plant.endpoints.iter().enumerate() {
        // The default schedule is the agent's own: no key.
        let offset = match p.schedule {
            PollSchedule::Slots => String::new(),
            other => format!(
                "poll_offset = \"{}ms\"\n",
                other.offset(i, &devices, p.interval).as_millis()
            ),
        };
        toml.push_str(&format!(
            "\n[[sources]]\nname = \"{source}\"\ntcp = \"{addr}\"\ntimeout = \"1s\"\n\
             default_poll = \"{poll}\"\n{offset}\n[[sources.devices]]\nname = \"dev{{n:04}}\"\n\
             count = {}\nfirst_index = {first}\nunit_id = 1\nmap = \"synth\"\n",
            names.len()
        ));
        first += names.len();
    }
    let inflight = p
        .max_inflight
        .map(|n| format!("max_inflight = {n}\n"))
        .unwrap_or_default();
    toml.push_str(&format!(
        "\n[[uplinks]]\nname = \"bench\"\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:{broker}\"\n\
         streams = [\"live\"]\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
         replay_rate = {}\n{inflight}\n[uplinks.spool]\nmax_bytes = {}\nsynchronous = \"{}\"\n",
        p.replay_rate, p.spool_max_bytes, p.spool_synchronous
    ));
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).expect("write the agent configuration");
    path
}

pub(super) struct AgentProcess {
    pub(super) child: Child,
    pub(super) log: PathBuf,
    pub(super) http: u16,
}

impl AgentProcess {
    pub(super) fn spawn(
        bin: &Path,
        config: &Path,
        http: u16,
        dir: &Path,
    ) -> anyhow::Result<AgentProcess> {
        let log = dir.join("agent.log");
        let child = Command::new(bin)
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        Ok(AgentProcess { child, log, http })
    }

    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            anyhow::bail!("the agent exited ({status}):\n{log}");
        }
        Ok(())
    }

    pub(super) fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every `name{…} value` sample of the agent's `/metrics` at `http_port`.
pub(super) fn metric_sum(http_port: u16, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut total = 0u64;
    let mut found = false;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && (rest.starts_with('{') || rest.starts_with(' '))
        {
            found = true;
            total += rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
    }
    found.then_some(total)
}
