//! The budget's gauges, through the `metrics` facade (a no-op until a recorder is installed).

use loraforge_domain::budget::BudgetStatus;

pub(crate) fn record(s: &BudgetStatus) {
    metrics::gauge!("loraforge_spend_month_micros").set(s.spent.micros() as f64);
    metrics::gauge!("loraforge_budget_left_micros").set(s.left().micros() as f64);
}
