//! Running the same SQL on either engine: [`soma_store::on_pool!`].

pub(crate) use soma_store::on_pool;
