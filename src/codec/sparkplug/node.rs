//! The node metrics: the `metrics` stream's calculator figures and derived points as metrics of
//! the edge node itself (NBIRTH, NDATA), and the names they have there.

use super::*;

/// A figure of the `metrics` stream that is a metric of the edge node itself (NBIRTH, NDATA):
/// where it comes from, and the name it has there.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMetric {
    /// The Sparkplug metric name: `calc/<calc>/<label>[/<period>]/<metric>` for a calculator's
    /// figure ([`NodeMetric::calc`]), `derived/<device>/<name>` for a derived point
    /// ([`NodeMetric::derived`]).
    pub name: Arc<str>,
    /// The `calc` of the metric batches that carry it.
    pub calc: Arc<str>,
    /// Its name in those batches.
    pub metric: Arc<str>,
    /// Which of the metrics of that name it is.
    pub place: Place,
    /// The declared unit (empty: none).
    pub unit: Arc<str>,
}

/// Which metric of a batch a node metric stands for, among those of its calculator and name.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// A derived point: the metric with exactly these labels (all that tells two points of one
    /// name apart).
    Labels(Vec<(Arc<str>, Arc<str>)>),
    /// A calculator's figure: the metric whose first label (the line, the smelter) has the value
    /// `first` and whose label [`PERIOD_LABEL`] is `period` (none: a minute's figure). Its other
    /// labels describe the value rather than place it (a period's `production` basis, measured
    /// or by Faraday, may change from one day to the next) and are not compared; a figure of one
    /// cell (label [`CELL_LABEL`]) is never a line's.
    Figure {
        /// The value of the first label.
        first: Arc<str>,
        /// The closed window, if it is one's.
        period: Option<Arc<str>>,
    },
}

/// The label of a calculator's figure that names its closed window (`day`, `month`, `ytd`).
pub const PERIOD_LABEL: &str = "period";
/// The label of a calculator's figure of one cell.
pub const CELL_LABEL: &str = "cell";

impl Place {
    pub(super) fn matches(&self, labels: &[(Arc<str>, Arc<str>)]) -> bool {
        let value = |key: &str| labels.iter().find(|(k, _)| &**k == key).map(|(_, v)| v);
        match self {
            Place::Labels(l) => l.as_slice() == labels,
            Place::Figure { first, period } => {
                labels.first().map(|(_, v)| v) == Some(first)
                    && value(PERIOD_LABEL) == period.as_ref()
                    && value(CELL_LABEL).is_none()
            }
        }
    }
}

/// One level of a node metric name: a `/` inside a value would open another level, so it is
/// written `_`.
pub(super) fn level(value: &str) -> String {
    value.replace('/', "_")
}

impl NodeMetric {
    /// A calculator's figure, named by its place: `calc/<calc>/<first label>/<metric>`, e.g.
    /// `calc/potline/potline1/dc_kwh_per_t_today`, with the period as a level before the name
    /// for the figure of a closed window (`calc/potline/potline1/day/dc_kwh_per_t`).
    ///
    /// One node metric per period: the day's and the month's figure are different quantities
    /// that a host trends, stores and alarms on separately, and one metric taking the day's
    /// value at midnight and the month's at the month's end would have a meaningless history.
    /// Each value is timestamped with the end of its window.
    pub fn calc(
        calc: &str,
        first: &str,
        period: Option<&str>,
        metric: &str,
        unit: &str,
    ) -> NodeMetric {
        let mut name = format!("{NODE_CALC_PREFIX}/{}/{}", level(calc), level(first));
        if let Some(p) = period {
            name.push('/');
            name.push_str(&level(p));
        }
        name.push('/');
        name.push_str(&level(metric));
        NodeMetric {
            name: Arc::from(name),
            calc: Arc::from(calc),
            metric: Arc::from(metric),
            place: Place::Figure {
                first: Arc::from(first),
                period: period.map(Arc::from),
            },
            unit: Arc::from(unit),
        }
    }

    /// A derived point of the `metrics` stream, `derived/<device>/<name>`: the batches of
    /// calculator `derived` carry it under its name with exactly its labels.
    pub fn derived(p: &DerivedPoint) -> NodeMetric {
        NodeMetric {
            name: Arc::from(format!(
                "{NODE_DERIVED_PREFIX}/{}/{}",
                level(&p.device),
                level(&p.name)
            )),
            calc: Arc::from(DERIVED_CALC),
            metric: p.name.clone(),
            place: Place::Labels(p.labels.clone()),
            unit: p.unit.clone(),
        }
    }
}

/// The node metrics of an edge node that carries the `metrics` stream: the `metrics` derived
/// points in `[[derived]]` order, then every figure the calculators of `calc` can emit
/// ([`catalog::metrics`], in its order), one per period, except a cell's.
pub fn node_metrics(derived: &[DerivedPoint], calc: Option<&CalcConfig>) -> Vec<NodeMetric> {
    let mut out: Vec<NodeMetric> = derived
        .iter()
        .filter(|p| p.stream == DerivedStream::Metrics)
        .map(NodeMetric::derived)
        .collect();
    for m in calc.map(catalog::metrics).unwrap_or_default() {
        if catalog::is_cell_figure(m.calc, m.name) {
            continue;
        }
        for period in catalog::periods(m.calc, m.name) {
            out.push(NodeMetric::calc(m.calc, &m.label, *period, m.name, m.unit));
        }
    }
    out
}
