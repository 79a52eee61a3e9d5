//! The poller: one task per connection.
