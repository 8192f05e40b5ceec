-- The sample warehouse the example policies describe (loaded by
-- `rowgate demo`): an international e-commerce company, support tickets,
-- a daily sales summary, and salaries nobody but admins may read.
CREATE TABLE countries (id int PRIMARY KEY, name text NOT NULL, region text NOT NULL);
INSERT INTO countries VALUES
  (1, 'Vietnam', 'APAC'), (2, 'Singapore', 'APAC'), (3, 'Thailand', 'APAC'),
  (4, 'Malaysia', 'APAC'), (5, 'Indonesia', 'APAC'), (6, 'France', 'EMEA'),
  (7, 'Germany', 'EMEA'), (8, 'United States', 'AMER');

CREATE TABLE merchants (id int PRIMARY KEY, name text NOT NULL, country_id int REFERENCES countries);
INSERT INTO merchants VALUES
  (1, 'King Inc', 1), (2, 'Saigon Foods', 1), (3, 'Lion City Tech', 2),
  (4, 'Bangkok Silk', 3), (5, 'KL Motors', 4), (6, 'Jakarta Coffee', 5),
  (7, 'Paris Mode', 6), (8, 'Berlin Bikes', 7), (9, 'NY Deli', 8);

CREATE TABLE orders (id int PRIMARY KEY, merchant_id int REFERENCES merchants, amount numeric(10, 2), placed_on date);
INSERT INTO orders
SELECT i, (i % 9) + 1, round((10 + (i * 37) % 490)::numeric, 2), date '2026-01-01' + (i % 90)
FROM generate_series(1, 90) AS i;

CREATE TABLE tickets (id int PRIMARY KEY, assignee text NOT NULL, subject text NOT NULL);
INSERT INTO tickets VALUES
  (1, 'alice', 'Refund for order 12'), (2, 'alice', 'Login problem'),
  (3, 'bob', 'Invoice address'), (4, 'carol', 'Shipping delay'), (5, 'alice', 'Damaged parcel');

CREATE TABLE daily_sales (day date PRIMARY KEY, orders int NOT NULL, revenue numeric(12, 2) NOT NULL);
INSERT INTO daily_sales
SELECT placed_on, count(*), sum(amount) FROM orders GROUP BY placed_on;

CREATE SCHEMA hr;
CREATE TABLE hr.salaries (employee text PRIMARY KEY, amount int NOT NULL);
INSERT INTO hr.salaries VALUES ('alice', 52000), ('bob', 61000), ('carol', 58000);
