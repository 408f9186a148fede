// tests are added below
